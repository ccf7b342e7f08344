"""Depth to what is written: smoothed over time, in relative units or metres, in colour, gray or 16 bits."""
