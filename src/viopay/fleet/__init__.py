"""Fleet health (PROTOCOL §8): terminal heartbeats, online/offline, the timer that notices."""
