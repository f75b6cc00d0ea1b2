terraform {
  required_providers {
    fleetform = {
      source = "fleetform/fleetform"
    }
  }
}

# Both settings may come from the environment instead:
# FLEETFORM_ENDPOINT and FLEETFORM_TOKEN.
provider "fleetform" {
  endpoint = "http://127.0.0.1:7400"
  token    = var.fleetform_token
}

variable "fleetform_token" {
  type      = string
  sensitive = true
}
