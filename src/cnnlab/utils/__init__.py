"""The shared toolkit every cnnlab package may use (it imports nothing of cnnlab): registries, index lists,
tagged torch files, device names, config diffs, peak memory, atomic writes, plotting, progress, seeding."""
