-- PostgreSQL's statements by the process that issues them, from pg_stat_statements (bench/README.md,
-- "Where PostgreSQL's CPU per event goes"). On a stack started with
--   SPOOR_PG_EXTRA_CONF="shared_preload_libraries = 'pg_stat_statements'" deploy/stack.sh up
-- then CREATE EXTENSION pg_stat_statements; SELECT pg_stat_statements_reset(); a run of bench/pipeline.py; and
--   psql ... -v k=<events / 1000> -v w=100 -v lim=15 -f bench/pg_statements.sql
-- Top-level statements only (a function's inner statements are in its caller's time). The issuing process
-- is told by the statement's text (which code sends it); pg_stat_activity's application_name (spoor-<process>,
-- deploy/stack.sh) confirms it for a sample of running statements.
create temp view s as (
 select calls, total_exec_time t, regexp_replace(query,'\s+',' ','g') q from pg_stat_statements where toplevel
);
create temp view c as select *, case
  when q like '%max(persisted_at)%' then 'bench/psql'
  when q like 'PREPARE spoor_%' or q like 'COPY events%' or q like '%spoor_insert_triggers%' or q like 'INSERT INTO metric_windows%' or q like 'INSERT INTO dead_letters%' then 'workers'
  when q like 'WITH computed%' or q like '%spoor_refresh_interest_profiles%' or q like '%segment_%' or q like '%order_attribution%' or q like '%user_recommendations%' or q like '%product_recommendations%' or q like 'SELECT user_profiles.user_key FROM user_profiles WHERE user_profiles.updated_at%' or q like '%FROM events WHERE user_key = ANY%' or q like '%FROM sessions WHERE user_key = ANY%' or q like 'SELECT user_key FROM user_profiles WHERE user_key = ANY%' or q like '%user_rfm%' or q like '%product_affinity a%' or q like '%user_consent WHERE updated_at%' or q like '%product_popularity WHERE updated_at%' or q like '%FROM unnest(CAST%' or q like '%user_identities%' or q like '%spoor_retention%' then 'segments'
  when q like 'SELECT i.facet, i.value, i.weight%' or q like 'SELECT max(updated_at) FROM user_interests%' or q like 'SELECT user_profiles.user_key, user_profiles.updated_at%' or q like '%FROM user_interests i%' then 'segments'
  when q like '%product_popularity ORDER BY trend%' then 'admin_api'
  when q = 'SELECT $1' then 'pre-ping'
  when q like '%campaign%' then 'campaigns'
  when q like '%pg_stat_activity%' or q like '%percentile_cont%' or q like 'SELECT count(*) FROM events WHERE event_id BETWEEN%' or q like '%pg_stat_statements%' or q like '%pg_indexes%' then 'bench/psql'
  else '?' end as who from s;
select who, calls, round(t) ms, round((t/:k)::numeric,1) ms_per_1k, left(q,:w) from c order by t desc limit :lim;
select who, sum(calls) calls, round(sum(t)) ms, round((sum(t)/:k)::numeric,1) ms_per_1k from c group by 1 order by 3 desc;
