"""Bridges to tools outside livetag that speak their own protocol (Lab Streaming Layer)."""
