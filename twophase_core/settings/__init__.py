"""What a setting is and what a run is configured by: specs, typed configs, their hash."""
