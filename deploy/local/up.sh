#!/usr/bin/env bash
# N query replicas behind nginx: REPLICAS=3 SNAPSHOT_ROOT=DIR deploy/local/up.sh
# (see deploy/local/ctl.sh for every setting).
exec "$(dirname "$0")/ctl.sh" up
