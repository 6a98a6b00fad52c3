"""Where and how a process computes: `device` (device, precision, autocast), `distributed` (torchrun: the only
reader of RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE), `memory` (the estimates and measured peaks),
`hardware` (what a device offers: memory, peak FLOP/s), `perf` (FLOPs per token, timing)."""
