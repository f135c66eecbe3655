// Hits per path, kept in memory.
class Counter {
  constructor() { this.hits = new Map(); }
  hit(path) {
    const n = (this.hits.get(path) || 0) + 1;
    this.hits.set(path, n);
    return n;
  }
  snapshot() { return Object.fromEntries([...this.hits.entries()].sort()); }
}
module.exports = { Counter };
