"""The staff console at /staff/: job monitor, job detail, vendor status panel.

The model admin edits rows; the console answers operational questions (what
is failing, where, how long jobs take, what they cost) and lets staff retry
a failed job. Staff only: anonymous visitors are sent to the admin login,
signed-in non-staff users get a 404 so the console's existence is not shown.
"""
