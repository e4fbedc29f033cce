"""MAVLink via pymavlink: telemetry in, fixes out, heartbeat, link health (onboard issue)."""
