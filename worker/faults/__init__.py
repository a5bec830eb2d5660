"""Fault handling: who is alive, the reaper's sweeps, adoption of a dead worker's
containers, settling rq jobs on another worker's behalf, and Redis/Docker outages."""
