#!/usr/bin/env bash
# Stops what deploy/local/up.sh started.
exec "$(dirname "$0")/ctl.sh" down
