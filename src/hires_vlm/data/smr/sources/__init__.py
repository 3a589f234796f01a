"""One converter per SMR source: each reads that source's released files and yields records."""
