"""Report: results.json, the figures as PNG, and a self-contained report.html."""
