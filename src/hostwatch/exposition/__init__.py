"""/metrics: the exposition rendered by a process of its own from a copy of the state table.

- `text`: the renderer, byte for byte what prometheus-client writes (from the table's numbers
  and the rows' descriptions);
- `rows`: what the renderer knows of each row besides its numbers;
- `worker`: the renderer process (`python -m hostwatch.exposition.worker`);
- `client`: the daemon's side, `Scraper`;
- `wire`: the messages between the two.

Nothing is imported here, so that the renderer process loads only what it uses.
"""
