/* A C program that calls the Go library's RunClient(addr, n): the Go TLS code runs in a
 * shared object, not in the executable. Exit status: RunClient's (0: every answer right). */
#include <stdio.h>
#include <stdlib.h>

extern int RunClient(char *addr, int n);

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: host ADDR N\n");
        return 2;
    }
    return RunClient(argv[1], atoi(argv[2]));
}
