"""Pure PyTorch implementations: the test oracle for every kernel and the CPU fallback."""
