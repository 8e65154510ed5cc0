"""What the device, the server and the safety MCU share: envelope, topics, program model, settings."""
