"""The experiments: each kind's config, units, plan and result, presets and sweeps."""
