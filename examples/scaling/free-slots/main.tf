# Free slots: keep 2 to 4 process slots free on running machines, so a new process
# starts in seconds instead of waiting for a machine to boot. With 4 processes per
# machine and 2 idle servers (available_servers):
#   6 active sessions → 8 processes on 3 machines, 4 slots free;
#   8 active sessions → 10 processes, still 3 machines, 2 free;
#   9 active sessions → 11 processes on 4 machines, 5 free: 3 machines would leave only
#   1 free, below the minimum, and the minimum wins over the maximum.
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

resource "fleetform_zone" "free_slots" {
  fleet_id                 = var.fleet_id
  name                     = "eu-central"
  initial_server_processes = 2
  free_slots_min           = 2
  free_slots_max           = 4

  buffer_rule {
    available_servers = 2
  }

  data_center {
    name                 = "aws-eu-central-1"
    location             = "eu-central-1"
    max_server_processes = 400

    machine_model {
      instance_type         = "c6i.xlarge"
      processes_per_machine = 4
    }
  }
}
