//! ValidatingAdmissionPolicy manifests.
