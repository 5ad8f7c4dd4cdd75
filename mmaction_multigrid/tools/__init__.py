"""Command-line tools: plan, measure, prepare, demo data."""
