// The HTML page of the counter service.
const escape = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
function page(hits) {
  return `<!doctype html>\n<title>counter</title>\n<h1>Counter service</h1>\n<p>this page was served ${escape(hits)} time(s)</p>\n`;
}
module.exports = { page };
