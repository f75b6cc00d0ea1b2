terraform {
  # `optional()` attributes in the `zones` type.
  required_version = ">= 1.3"

  required_providers {
    fleetform = {
      source = "fleetform/fleetform"
    }
  }
}
