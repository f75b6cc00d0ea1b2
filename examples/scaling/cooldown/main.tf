# Cooldown: after 30 minutes without an active session the zone's VM capacity scales to
# zero and its status turns AVAILABLE_COOLDOWN. The next placement request wakes it back
# to initial_server_processes; with wait_seconds the request is answered as soon as a
# process is ready. For test zones, night-time regions and staging.
#
#   terraform apply -var fleet_id=flt-…

terraform {
  required_providers {
    fleetform = {
      source = "fleetform/fleetform"
    }
  }
}

# endpoint and token come from FLEETFORM_ENDPOINT and FLEETFORM_TOKEN.
provider "fleetform" {}

variable "fleet_id" {
  description = "The fleet whose server processes the zone runs (a fleetform_fleet id)."
  type        = string
}

resource "fleetform_zone" "staging" {
  fleet_id                 = var.fleet_id
  name                     = "staging"
  initial_server_processes = 2
  cooldown_minutes         = 30

  buffer_rule {
    available_servers = 1
  }

  data_center {
    name                 = "aws-eu-central-1"
    location             = "eu-central-1"
    max_server_processes = 20

    machine_model {
      instance_type         = "c6i.large"
      processes_per_machine = 2
    }
  }
}
