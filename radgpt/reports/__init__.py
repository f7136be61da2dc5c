"""reports → records: corpus readers, the section parser, patient-level splits, instruction tasks."""
