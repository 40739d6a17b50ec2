"""Node telemetry: live readings from the host (psutil), NVIDIA discrete GPUs (NVML) and
Jetson boards (jtop), behind one TelemetrySource interface and merged into NodeSamples."""
