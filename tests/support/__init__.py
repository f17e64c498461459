"""Test support: what the tests (and the benchmarks and screenshot script that run the service) share. Not
part of the installed package."""
