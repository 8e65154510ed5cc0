"""The safety microcontroller: firmware logic and its simulator."""
