// A small counter service: the node web app of images/nodeweb.yaml (several modules, JSON, a page).
const http = require("http");
const { Counter } = require("./lib/counter");
const { page } = require("./lib/page");

const counter = new Counter();
const port = Number(process.argv[2] || 3000);

http.createServer((req, res) => {
  if (req.url === "/") {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    res.end(page(counter.hit("/")));
  } else if (req.url === "/stats") {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify(counter.snapshot()));
  } else {
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("not found\n");
  }
}).listen(port, "0.0.0.0", () => console.log(`counter service listening on port ${port}`));
