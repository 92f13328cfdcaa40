"""Operations on a running database: retention, maintenance and aggregate refreshes."""
