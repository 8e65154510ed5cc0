"""Patient data exports: FHIR R4 JSON and CSV, and program audio previews."""
