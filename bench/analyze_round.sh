#!/usr/bin/env bash
# What one autoanalyze round of the worker's tables does to freshness: paced runs with an ANALYZE
# of those tables 15 s into the paced phase, under settings A or B, or none (C), alternated A B C;
# autovacuum is off meanwhile so it adds no rounds of its own. Needs `make up`.
#
#   bench/analyze_round.sh [repetitions]      (bench/README.md, tenth session)
#   VARIANT_A="SET vacuum_cost_delay = 2" VARIANT_B="SET vacuum_cost_delay = 20" bench/analyze_round.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DB="${SPOOR_DATABASE_URL:-postgresql://spoor:spoor@127.0.0.1:5433/spoor}"
DB="${DB/postgresql+psycopg2:/postgresql:}"
REPS="${1:-3}"
VARIANT_A="${VARIANT_A:-SET default_statistics_target = 100}"
VARIANT_B="${VARIANT_B:-SET default_statistics_target = 30}"
TABLES="events, sessions, user_activity, user_profiles, segment_members, segment_transitions"
LOGS="$(mktemp -d)"

psql -X -q "$DB" -c "ALTER SYSTEM SET autovacuum = off" -c "SELECT pg_reload_conf()" >/dev/null
trap 'psql -X -q "$DB" -c "ALTER SYSTEM RESET autovacuum" -c "SELECT pg_reload_conf()" >/dev/null' EXIT

for rep in $(seq "$REPS"); do
  for variant in A B C; do
    log="$LOGS/$variant-$rep.log"
    .venv/bin/python bench/pipeline.py --events 2000 --paced-seconds 40 >"$log" 2>&1 &
    bench=$!
    until grep -q "phase 3" "$log" 2>/dev/null; do sleep 0.2; done
    sleep 15
    took=""
    if [[ $variant != C ]]; then
      settings=$([[ $variant == A ]] && echo "$VARIANT_A" || echo "$VARIANT_B")
      started=$(date +%s.%N)
      psql -X -q "$DB" -c "$settings" -c "ANALYZE $TABLES"
      took=$(echo "$(date +%s.%N) - $started" | bc)
    fi
    wait "$bench"
    echo "$variant rep $rep analyze_s=${took:-none} $(grep -E '^freshness_p(50|99)_s' "$log" | tr '\n' ' ')"
  done
done
