"""edge-bench: complexity (params/MACs/sizes), latency, memory and energy of vessel-edge models, and reports."""
