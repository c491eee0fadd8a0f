-- Queue acks: a finished job no longer names the consumer that ran it.
--
-- apalis's ack (`queries/task/handle_result.sql` in apalis-postgres) locks the
-- acknowledged jobs by joining their ids with `lock_by = <consumer>`, and
-- apalis leaves `lock_by` set when a job finishes. A consumer's name is new at
-- every start, so between two ANALYZEs the planner expects it to hold a row or
-- two and reads its rows through idx_apalis_jobs_lock_by: every job that
-- consumer ever ran. That was 91 to 943 rows for the ack of one job in a 10 s
-- run, a quarter of Postgres's statement time at 100 messages a second
-- (BENCHMARKS.md, sessions 11 and 12), and it grows with the consumer's age.
--
-- This trigger clears `lock_by` when a job leaves Running and Queued (Done,
-- Failed, Killed, or Pending when put back), so a consumer's rows are its jobs
-- in flight, whatever the plan. Nothing reads `lock_by` of a finished job:
-- apalis's re-enqueues, its heartbeat and ours (`store::postgres`) ask for
-- Running and Queued jobs only, and a failed job that is retried gets its new
-- consumer from the fetch. (apalis's `task-tracking` heartbeat counts a worker's
-- jobs by `lock_by`; it counts the jobs it holds, which are still running.)
--
-- Rows finished before this migration keep their names: those consumers have
-- all stopped, as every start takes a new name, so no ack reads them again.
CREATE OR REPLACE FUNCTION apalis.release_finished_job() RETURNS TRIGGER AS $$
BEGIN
    NEW.lock_by := NULL;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS release_finished_jobs ON apalis.jobs;
CREATE TRIGGER release_finished_jobs
BEFORE UPDATE OF status ON apalis.jobs
FOR EACH ROW
WHEN (NEW.lock_by IS NOT NULL AND NEW.status NOT IN ('Running', 'Queued'))
EXECUTE FUNCTION apalis.release_finished_job();
