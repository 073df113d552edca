with source as (

    select * from {{ source('raw', 'orders') }}

),

renamed as (

    select
        order_id,
        customer_id,
        status as raw_status,
        case lower(trim(status))
            when 'completed' then 'completed'
            when 'complete' then 'completed'
            when 'shipped' then 'completed'
            when 'delivered' then 'completed'
            when 'placed' then 'pending'
            when 'pending' then 'pending'
            when 'cancelled' then 'cancelled'
            when 'canceled' then 'cancelled'
            when 'returned' then 'returned'
            else 'unknown'
        end as order_status,
        currency,
        ordered_at,
        updated_at,
        _loaded_at

    from source

)

select * from renamed
