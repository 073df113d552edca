"""The loop: the stages as jobs, the queue that runs them, and what happens when one fails."""
