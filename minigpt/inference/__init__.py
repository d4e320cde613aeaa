"""Using a trained model: generation (greedy, temperature, top-k) and the KV cache."""
