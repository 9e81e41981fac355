"""Tests that start no process and open no socket: pure functions and in-process objects."""
