"""Report rendering from results.json (Markdown + HTML, Table 1/2/3 style): issue #5, not built yet."""
