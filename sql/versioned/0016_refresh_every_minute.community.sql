-- The refresh job every minute (was 5), materializing a ten-minute slot or an hour once it is closed
-- by the job's margin, 2 minutes (was 5; its config, read by sql/repeatable/35_refresh.community.sql).
-- A window ending at the hour just closed is read from the running sums 2 to 3 minutes after the
-- hour instead of 5 to 10, and a reading that lands in materialized time counts in every answer
-- after the next run, within a minute instead of 5. Readings within the margin of their time (the
-- stream writers' seconds, a gateway's minute of batching) land past the watermarks and count at
-- once; later ones (a device clock behind, a backlog after an outage) make the next run
-- materialize their slot and hour again, as readings more than 5 minutes late always did.
SELECT alter_job(job_id, schedule_interval => INTERVAL '1 minute', config => '{"margin": "2 minutes"}')
FROM timescaledb_information.jobs
WHERE proc_schema = 'telemetry' AND proc_name = 'refresh_energy_aggregates';
