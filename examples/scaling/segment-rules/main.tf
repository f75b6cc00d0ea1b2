# Segment rules: the buffer follows the load. The rule in force is the last whose
# min_active_sessions the active sessions reached: a fixed handful of idle servers while
# the game is quiet, then a share of the active sessions as it grows.
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

resource "fleetform_zone" "segments" {
  fleet_id                 = var.fleet_id
  name                     = "eu-central"
  initial_server_processes = 10

  # 0–99 active sessions: keep 10 idle servers.
  buffer_rule {
    min_active_sessions = 0
    available_servers   = 10
  }

  # 100–999 active sessions: keep 15% of them idle (150 active → 23 idle).
  buffer_rule {
    min_active_sessions = 100
    available_percent   = 15
  }

  # From 1000 active sessions on: 10% is enough at that scale.
  buffer_rule {
    min_active_sessions = 1000
    available_percent   = 10
  }

  data_center {
    name                 = "aws-eu-central-1"
    location             = "eu-central-1"
    max_server_processes = 3000

    machine_model {
      instance_type         = "c6i.2xlarge"
      processes_per_machine = 6
    }
  }
}
