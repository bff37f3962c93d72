// Package main is a Go library built with -buildmode=c-shared, for the gotls live test of
// a Go TLS client that a C program calls: RunClient dials addr and sends n lines
// "ping NN\n", reading one answer line for each, over one crypto/tls connection.
package main

import "C"

import (
	"bufio"
	"crypto/tls"
	"fmt"
)

//export RunClient
func RunClient(addr *C.char, n C.int) C.int {
	// The test's server has a self-signed certificate: what is checked here is the
	// capture, not the peer.
	conn, err := tls.Dial("tcp", C.GoString(addr), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return 1
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	for i := 0; i < int(n); i++ {
		if _, err := fmt.Fprintf(conn, "ping %02d\n", i); err != nil {
			return 2
		}
		line, err := r.ReadString('\n')
		if err != nil || line != fmt.Sprintf("pong ping %02d\n", i) {
			return 3
		}
	}
	return 0
}

func main() {}
