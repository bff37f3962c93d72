// A real HTTPS client for live tests in node: its TLS is the OpenSSL that node links (node's
// own copy, statically, or the system's libssl), driven through memory BIOs.
//
// usage: node [--tls-keylog=FILE] https_client.js PORT TLS PATH [PATH ...]
//   TLS is 1.2 or 1.3 (the only version offered); one connection per path, one after the
//   other. Prints one JSON line per request: path, local port, status, response body.
// With "wait" as the first PATH, it prints {"pid": ...} and waits for a line on stdin
// before the first request (so that a capture can attach to this process first).
"use strict";

const https = require("https");

function get(port, tls, path) {
  const version = tls === "1.2" ? "TLSv1.2" : "TLSv1.3";
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: "127.0.0.1", port, path, method: "GET", agent: false,
      rejectUnauthorized: false, minVersion: version, maxVersion: version,
    }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({
        path, local_port: req.socket.localPort, status: res.statusCode,
        body: Buffer.concat(chunks).toString(),
      }));
    });
    req.on("error", reject);
    req.end();
  });
}

function line() {
  return new Promise((resolve) => process.stdin.once("data", () => {
    process.stdin.pause();
    resolve();
  }));
}

async function main() {
  const [port, tls, ...paths] = process.argv.slice(2);
  if (paths[0] === "wait") {
    paths.shift();
    console.log(JSON.stringify({ pid: process.pid }));
    await line();
  }
  for (const path of paths) {
    console.log(JSON.stringify(await get(Number(port), tls, path)));
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
