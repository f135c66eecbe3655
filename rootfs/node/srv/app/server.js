// An HTTP server run by node as init in a tailor microVM.
const http = require("http");
const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end(`Hello from Node.js ${process.version}\n`);
});
server.listen(3000, "0.0.0.0", () => console.log("node server listening on port 3000"));
