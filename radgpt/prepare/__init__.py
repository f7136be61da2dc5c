"""`radgpt prepare`: report files → records (sources, sections) → patient-level splits → instruction data."""
