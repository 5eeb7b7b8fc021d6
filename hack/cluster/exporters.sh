# Sourced by build.sh and images.sh: the exporters of monitored instances,
# read from their one source, src/engine/exporter.rs (`const POSTGRES:
# Exporter = Exporter { default_image: "...", tag: "...", ... }`).
exporters_rs=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/src/engine/exporter.rs
# exporter_field CONST FIELD: a string field of that Exporter constant.
exporter_field() {
  local value
  value=$(sed -n "/^const $1: Exporter/,/^};/s/.*$2: \"\(.*\)\".*/\1/p" "$exporters_rs")
  [ -n "$value" ] || { echo "exporters.sh: no $2 of $1 in $exporters_rs" >&2; exit 1; }
  echo "$value"
}
exporter_tag() { exporter_field "$1" tag; }
exporter_image() { echo "$(exporter_field "$1" default_image):$(exporter_field "$1" tag)"; }
