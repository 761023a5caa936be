"""k4s benchmarks: `make bench` (python3 -m bench) measures on this machine and writes the numbers
to bench/results.json and into README.md. One module per section; each measures and renders
its own rows, and ratios sit side by side with their baseline from the same run."""
