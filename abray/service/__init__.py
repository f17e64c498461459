"""The job service's back end: the store (jobs, trials, metrics, and the job state machine), the scheduler that
starts each job's driver process, the driver itself, and the Ray cluster the jobs run on. The HTTP front end is
`api/`."""
