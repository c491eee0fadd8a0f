-- Queue fetches: apalis.get_jobs in PL/pgSQL, so its statement is planned once
-- per connection instead of on every call.
--
-- apalis 1.0 defines get_jobs as a LANGUAGE sql function. Postgres before 18
-- plans the body of a SQL function that cannot be inlined (this one updates
-- rows) on every call: about 0.1 ms of planning for an index scan that takes
-- 0.05 ms. A consumer fetches after every job it finishes and every wake-up,
-- so this ran about five times a message (BENCHMARKS.md, session 8). PL/pgSQL
-- keeps the plan of its query for the life of the connection: pgbench with
-- prepared statements, an empty fetch, 0.21 -> 0.095 ms a call.
--
-- Same name, parameters, default, result and statement as apalis's own
-- definition (migration 20260902075949_remove_pl_in_get_jobs); only the
-- language differs.
CREATE OR REPLACE FUNCTION apalis.get_jobs(
    worker_id TEXT,
    v_job_type TEXT,
    v_job_count INTEGER DEFAULT 5
)
RETURNS SETOF apalis.jobs
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    RETURN QUERY
    WITH jobs AS (
        SELECT id
        FROM apalis.jobs
        WHERE
            (
                status = 'Pending'
                OR (
                    status = 'Failed'
                    AND attempts < max_attempts
                )
            )
            AND run_at < now()
            AND job_type = v_job_type
        ORDER BY priority DESC, run_at ASC
        LIMIT v_job_count
        FOR UPDATE SKIP LOCKED
    )
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = worker_id,
        lock_at = now()
    FROM jobs
    WHERE j.id = jobs.id
    RETURNING j.*;
END;
$$;
