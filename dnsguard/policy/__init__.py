"""Who gets which filtering: client groups, schedules, safe search, rewrites, and the verdict."""
