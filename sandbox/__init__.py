"""Local stand-ins for the cloud services Straddle talks to. Tests and benchmarks only; never deployed."""
