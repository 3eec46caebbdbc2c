"""The project's benchmarks, run from the repository root as modules: `python -m benchmarks.<name>`
(the installed dimap_struct is what they measure). Their results and an index are in
benchmarks/results/ (README.md there); helpers two or more of them share are in `common`."""
