// A node HTTPS server or client for the live tests. node does TLS over memory buffers:
// its socket I/O happens outside SSL_read/SSL_write, which is what these tests exercise.
//   node node_tls.js server CERT KEY        prints "READY <port>", then one JSON line per
//                                           request: {"path", "client": [addr, port]}
//   node node_tls.js client PORT N [keep]   N GETs of /node-<i>, one connection each unless
//                                           "keep"; prints {"path", "local_port"} per request
"use strict";
const https = require("https");
const fs = require("fs");

const [mode, ...args] = process.argv.slice(2);
if (mode === "server") {
  const [cert, key] = args;
  const server = https.createServer(
    { cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
    (req, res) => {
      const s = req.socket;
      console.log(JSON.stringify({ path: req.url, client: [s.remoteAddress, s.remotePort] }));
      res.end(`hello ${req.url}\n`);
    });
  server.listen(0, "127.0.0.1", () => console.log(`READY ${server.address().port}`));
} else if (mode === "client") {
  const port = Number(args[0]);
  const n = Number(args[1]);
  // agent false: a connection of its own for every request.
  const agent = args[2] === "keep" ? new https.Agent({ keepAlive: true, maxSockets: 1 }) : false;
  let i = 0;
  const next = () => {
    if (i >= n) {
      if (agent) agent.destroy();
      return;
    }
    const path = `/node-${String(i++).padStart(2, "0")}`;
    const req = https.get({ host: "127.0.0.1", port, path, agent, rejectUnauthorized: false },
      (res) => {
        const local = res.socket.localPort;
        res.resume();
        res.on("end", () => {
          console.log(JSON.stringify({ path, local_port: local }));
          next();
        });
      });
    req.on("error", (e) => { console.error(e.message); process.exit(1); });
  };
  next();
} else {
  console.error("usage: node_tls.js server CERT KEY | client PORT N [keep]");
  process.exit(2);
}
